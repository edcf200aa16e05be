;; Attacks: the deadline, from inside a host call. `_start` asks `poll_oneoff` to sleep
;; 30 s on one relative monotonic clock; epoch and fuel checks never run while a host
;; call waits.
;; Expected: `timeout` at the job's deadline (not 30 s later), and the next job on the
;; same sandbox succeeds. If the sleep ever returns, `unreachable` makes it a trap.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; One 48-byte subscription at 0: userdata 0, tag 0 (clock) at 8, clock id 1
  ;; (monotonic) at 16, timeout 30e9 ns at 24, precision 0 at 32, flags 0 (relative)
  ;; at 40. Events at 256, the event count at 512.
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 30000000000))
    (drop (call $poll_oneoff (i32.const 0) (i32.const 256) (i32.const 1) (i32.const 512)))
    unreachable))
