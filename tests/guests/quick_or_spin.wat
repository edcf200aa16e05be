;; Attacks: nothing; a tool for interrupt tests. _start reads one byte of stdin and
;; exits at once (no output) when it is `q`, else spins forever like infinite_loop.wat.
;; Expected: inputs starting with `q` succeed quickly; the others run until their
;; deadline or until the batch abandons them, so a test knows which jobs are running.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; One iovec at 0: a 1-byte buffer at 16; the count read goes to 8.
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (i32.eq (i32.load8_u (i32.const 16)) (i32.const 113))
      (then (return)))
    (loop $forever
      (br $forever))))
