;; Attacks: nothing. The smallest WASI command: exports memory and an empty _start.
;; Expected: succeeds with exit code 0 and no output. Used by benchmarks to measure
;; the fixed per-job cost (compile cache, instantiation, teardown).
(module
  (memory (export "memory") 1)
  (func (export "_start")))
