;; Attacks: memory. _start grows linear memory by 16 pages (1 MiB) at a time, forever,
;; and ignores failures: when memory.grow returns -1 it simply tries again, so nothing
;; in the guest ever stops.
;; Expected: the host's memory limit refuses growth past the job's memory cap and,
;; with trap_on_grow_failure (or a limiter that errors), the refusal traps and the job
;; ends as a memory-limit failure. A host that only makes grow return -1 would leave
;; this spinning until the deadline: that is the point of the test.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $again
      (drop (memory.grow (i32.const 16)))
      (br $again))))
