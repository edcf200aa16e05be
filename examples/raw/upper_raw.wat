;; upper_raw: ASCII uppercase through the raw ABI (no WASI; imports nothing).
;;
;; The raw ABI, as the host drives it:
;;   - The module exports `memory`, `alloc(len: i32) -> i32` and `process(ptr: i32,
;;     len: i32) -> i64`; `free(ptr: i32, len: i32)` and `finish() -> i64` are optional.
;;   - For each input chunk (<= 64 KiB by default) the host calls alloc(len), writes the
;;     chunk at the returned pointer, calls process(ptr, len), copies the output out,
;;     then calls free(ptr, len) if it is exported. At end of input it calls finish()
;;     if it is exported.
;;   - process/finish return an i64. >= 0 means (out_ptr << 32) | out_len, both u32,
;;     naming output bytes in guest memory that stay valid until the next call;
;;     out_len 0 means no output. A negative value fails the job with exit code -value.
;;
;; This module uppercases the chunk in place and returns it as the output. Memory:
;; page 0 is left unused (so no pointer handed out is ever 0), the chunk buffer starts
;; at 65536 and alloc grows memory when a chunk does not fit. Every alloc reuses the
;; same buffer: the host never holds two chunks at once. `free` is exported (a no-op)
;; so the host's free path gets exercised; `finish` is not, so its absence does too.
(module
  (memory (export "memory") 2)

  (global $buf i32 (i32.const 65536))

  ;; Returns $buf, growing memory so [$buf, $buf + len) is in bounds. Traps if memory
  ;; cannot grow: there is no way to report failure through alloc's i32.
  (func (export "alloc") (param $len i32) (result i32)
    (local $need i64)  ;; pages needed in all, computed in i64 so huge len cannot wrap
    (local.set $need
      (i64.shr_u
        (i64.add
          (i64.add (i64.extend_i32_u (global.get $buf)) (i64.extend_i32_u (local.get $len)))
          (i64.const 65535))
        (i64.const 16)))
    (if (i64.gt_u (local.get $need) (i64.extend_i32_u (memory.size)))
      (then
        (if (i32.eq
              (memory.grow (i32.wrap_i64 (i64.sub (local.get $need) (i64.extend_i32_u (memory.size)))))
              (i32.const -1))
          (then unreachable))))
    (global.get $buf))

  (func (export "free") (param $ptr i32) (param $len i32))

  (func (export "process") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32)
    (local $end i32)
    (local $c i32)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        ;; 'a'..'z' is the only range where c - 'a' < 26 unsigned
        (if (i32.lt_u (i32.sub (local.get $c) (i32.const 97)) (i32.const 26))
          (then (i32.store8 (local.get $p) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
