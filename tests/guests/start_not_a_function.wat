;; Attacks: the entry-point contract. Exports `_start` as a global, not a function.
;; Expected: the job fails before running anything with a clear "missing export"
;; error for `_start` (the export found at link time is not a function, so the
;; sandbox falls back to its lookup by name), not a trap or a crash.
(module
  (memory (export "memory") 1)
  (global (export "_start") i32 (i32.const 7)))
