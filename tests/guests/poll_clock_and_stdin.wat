;; Attacks: the deadline, through `poll_oneoff` on a 30 s clock mixed with an fd_read
;; subscription on stdin, then `fd_read` on stdin, in a loop: whichever call waits, it
;; must not outlive the job.
;; Expected: with a stdin that never delivers, `timeout` at the job's deadline; with a
;; stdin at its end, `unreachable` (the guest treats EOF as a failure).
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; 0: clock, monotonic, relative, 30 s
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 30000000000))
    ;; 48: tag 1 (fd_read) at 56, fd 0 at 64
    (i64.store (i32.const 48) (i64.const 7))
    (i32.store8 (i32.const 56) (i32.const 1))
    (i32.store (i32.const 64) (i32.const 0))
    ;; one iovec at 1024: 4096 bytes at 4096
    (i32.store (i32.const 1024) (i32.const 4096))
    (i32.store (i32.const 1028) (i32.const 4096))
    (loop $again
      (drop (call $poll_oneoff (i32.const 0) (i32.const 2048) (i32.const 2) (i32.const 2560)))
      (if (call $fd_read (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 3072))
        (then unreachable))
      (if (i32.eqz (i32.load (i32.const 3072)))
        (then unreachable))
      (br $again))))
