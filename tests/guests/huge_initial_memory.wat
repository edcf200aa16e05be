;; Attacks: memory at instantiation. Declares 60000 pages (about 3.66 GiB) of initial
;; linear memory; _start does nothing, so the whole attack is the declaration.
;; Expected: instantiation is refused by the host's memory limit (well over the
;; default 64 MiB cap) and the job fails as a memory-limit / instantiation error
;; without the worker reserving or committing the memory.
(module
  (memory (export "memory") 60000)
  (func (export "_start")))
