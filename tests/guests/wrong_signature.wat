;; Attacks: the entry-point contract. Exports `_start` with the wrong type,
;; (param i32) (result i32) instead of () -> ().
;; Expected: the job fails before running anything with a clear type-mismatch error
;; for `_start`, not a trap or a crash.
(module
  (memory (export "memory") 1)
  (func (export "_start") (param i32) (result i32)
    (local.get 0)))
