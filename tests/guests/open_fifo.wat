;; Attacks: the deadline, through a FIFO in a granted directory (preopen fd 3): opening
;; `fifo` for reading blocks in open(2) until a writer comes, and none does.
;; Expected (with a FIFO granted at fd 3): `timeout` at the job's deadline; `unreachable`
;; if the open fails or the read ever returns.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "fifo")
  (func (export "_start")
    ;; path_open(dirfd 3, no flags, "fifo", no oflags, rights fd_read, …) -> fd at 64
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 4)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 64))
      (then unreachable))
    ;; one iovec at 128: 1024 bytes at 1024
    (i32.store (i32.const 128) (i32.const 1024))
    (i32.store (i32.const 132) (i32.const 1024))
    (drop (call $fd_read (i32.load (i32.const 64)) (i32.const 128) (i32.const 1) (i32.const 256)))
    unreachable))
