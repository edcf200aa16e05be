;; Attacks: the deadline, through a `poll_oneoff` with several clock subscriptions (the
;; general path, not the single-sleep one): a relative monotonic clock of 30 s, a
;; relative realtime clock of 40 s and an absolute monotonic clock at u64::MAX ns.
;; Expected: `timeout` at the job's deadline; `unreachable` if the poll ever returns.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; Subscriptions are 48 bytes each, at 0, 48 and 96 (tag 0 = clock for all three).
  (func (export "_start")
    ;; 0: monotonic, relative, 30 s
    (i64.store (i32.const 0) (i64.const 1))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 30000000000))
    ;; 48: realtime, relative, 40 s
    (i64.store (i32.const 48) (i64.const 2))
    (i32.store (i32.const 64) (i32.const 0))
    (i64.store (i32.const 72) (i64.const 40000000000))
    ;; 96: monotonic, absolute (flags 1), u64::MAX
    (i64.store (i32.const 96) (i64.const 3))
    (i32.store (i32.const 112) (i32.const 1))
    (i64.store (i32.const 120) (i64.const -1))
    (i32.store16 (i32.const 136) (i32.const 1))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const 2048)))
    unreachable))
