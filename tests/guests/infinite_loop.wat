;; Attacks: CPU time. _start spins forever in an empty loop (no calls, no memory
;; traffic), the cheapest possible hang.
;; Expected: the host stops it by its wall-clock deadline (epoch interruption) or,
;; with a fuel budget, by running out of fuel; the job ends as a timeout / fuel
;; exhaustion, never hangs the worker.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever
      (br $forever))))
