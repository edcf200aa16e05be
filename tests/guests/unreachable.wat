;; Attacks: nothing; the simplest guest crash. _start executes `unreachable`.
;; Expected: the job fails as a trap (unreachable instruction), reported as such, and
;; the worker carries on with the next job.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    unreachable))
