;; Attacks: the entry-point contract. Exports memory and a function named `other`, but
;; neither `_start` (WASI command) nor `process` (raw ABI).
;; Expected: the job fails before running anything with a clear "missing export"
;; error (the entry point it looked for), not a trap or a crash.
(module
  (memory (export "memory") 1)
  (func (export "other")))
