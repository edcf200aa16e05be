;; Attacks: nothing; an arithmetic trap. _start computes i32.div_s 1 / 0. The divisor
;; comes from a mutable global and the quotient is stored to memory, so neither a
;; constant folder nor dead-code elimination can remove the division.
;; Expected: the job fails as a trap (integer divide by zero).
(module
  (memory (export "memory") 1)
  (global $zero (mut i32) (i32.const 0))
  (func (export "_start")
    (i32.store (i32.const 0)
      (i32.div_s (i32.const 1) (global.get $zero)))))
