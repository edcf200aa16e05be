;; Attacks: nothing; a pure CPU load. _start runs a 50,000,000-iteration LCG
;; (x = x * 1103515245 + 12345, wrapping i32) in locals, then stores x to memory
;; address 0 so the loop is not dead code. Imports nothing.
;; Expected: succeeds with exit code 0 and no output. Used by benchmarks to measure
;; the overhead of fuel metering and epoch interruption on hot loops; with a small
;; fuel budget it ends as fuel exhaustion instead.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i32)
    (local $x i32)
    (local.set $i (i32.const 50000000))
    (loop $iter
      (local.set $x
        (i32.add (i32.mul (local.get $x) (i32.const 1103515245)) (i32.const 12345)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $iter (local.get $i)))
    (i32.store (i32.const 0) (local.get $x))))
