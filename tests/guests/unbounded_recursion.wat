;; Attacks: the native stack. _start calls a function that calls itself forever. The
;; call is not in tail position (its result is used afterwards) and each frame keeps
;; several live locals, so frames are real and cannot be folded into a loop.
;; Expected: wasmtime's max_wasm_stack check traps with a stack-overflow trap and the
;; job fails as a trap; the worker process itself never overflows its stack.
(module
  (memory (export "memory") 1)
  (func $recurse (param $n i64) (result i64)
    (local $a i64)
    (local $b i64)
    (local $c i64)
    (local.set $a (i64.add (local.get $n) (i64.const 1)))
    (local.set $b (i64.mul (local.get $a) (i64.const 3)))
    (local.set $c (i64.xor (local.get $a) (local.get $b)))
    (i64.add
      (call $recurse (local.get $a))
      (i64.add (local.get $b) (local.get $c))))
  (func (export "_start")
    (i64.store (i32.const 0) (call $recurse (i64.const 0)))))
