;; Attacks: the deadline, through one absolute realtime clock subscription set ~290
;; years ahead (2^63 - 1 ns since the epoch).
;; Expected: `timeout` at the job's deadline; `unreachable` if the poll ever returns.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; One subscription at 0: clock id 0 (realtime) at 16, timeout at 24, flags 1
  ;; (absolute) at 40.
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 0))
    (i64.store (i32.const 24) (i64.const 0x7fffffffffffffff))
    (i32.store16 (i32.const 40) (i32.const 1))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 256) (i32.const 1) (i32.const 512)))
    unreachable))
