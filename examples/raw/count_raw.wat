;; count_raw: counts bytes and newlines through the raw ABI (no WASI; imports nothing)
;; and outputs "<bytes> <newlines>\n" once, at the end.
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
;; process returns 0 (no output) and only accumulates; finish formats the totals.
;; Memory: bytes [0, 64) are finish's output area, the chunk buffer starts at 65536 and
;; alloc grows memory when a chunk does not fit. No `free` is exported, so the host's
;; "free is optional" path gets exercised.
(module
  (memory (export "memory") 2)

  (global $buf i32 (i32.const 65536))
  (global $out_end i32 (i32.const 64))  ;; two u64s in decimal need at most 42 bytes
  (global $bytes (mut i64) (i64.const 0))
  (global $newlines (mut i64) (i64.const 0))

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

  (func (export "process") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32)
    (local $end i32)
    (local $n i64)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $n
          (i64.add (local.get $n)
            (i64.extend_i32_u (i32.eq (i32.load8_u (local.get $p)) (i32.const 10)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (global.set $newlines (i64.add (global.get $newlines) (local.get $n)))
    (global.set $bytes (i64.add (global.get $bytes) (i64.extend_i32_u (local.get $len))))
    (i64.const 0))

  ;; Writes $v in decimal so that it ends just before $pos; returns where it starts.
  (func $utoa_before (param $pos i32) (param $v i64) (result i32)
    (loop $digit
      (local.set $pos (i32.sub (local.get $pos) (i32.const 1)))
      (i64.store8 (local.get $pos) (i64.add (i64.rem_u (local.get $v) (i64.const 10)) (i64.const 48)))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (local.get $pos))

  ;; Builds "<bytes> <newlines>\n" backwards from $out_end.
  (func (export "finish") (result i64)
    (local $pos i32)
    (local.set $pos (i32.sub (global.get $out_end) (i32.const 1)))
    (i32.store8 (local.get $pos) (i32.const 10))
    (local.set $pos (call $utoa_before (local.get $pos) (global.get $newlines)))
    (local.set $pos (i32.sub (local.get $pos) (i32.const 1)))
    (i32.store8 (local.get $pos) (i32.const 32))
    (local.set $pos (call $utoa_before (local.get $pos) (global.get $bytes)))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $pos)) (i64.const 32))
      (i64.extend_i32_u (i32.sub (global.get $out_end) (local.get $pos)))))
)
