;; Attacks: table memory. _start grows a funcref table by 1000 null entries at a time,
;; forever, ignoring failures (table.grow returning -1 just means try again).
;; Expected: the host's table limit (resource limiter table_elements / trap on grow
;; failure) stops it with a trap or limit failure, or failing that the deadline
;; does; the worker's memory must stay bounded either way.
(module
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "_start")
    (loop $again
      (drop (table.grow $t (ref.null func) (i32.const 1000)))
      (br $again))))
