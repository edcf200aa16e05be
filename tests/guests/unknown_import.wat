;; Attacks: the host API surface. Imports a function the host does not provide,
;; env.launch_missiles, and calls it from _start.
;; Expected: linking fails before anything runs (unknown import); the job fails as
;; an instantiation / link error naming the import, and _start never executes.
(module
  (import "env" "launch_missiles" (func $launch_missiles))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $launch_missiles)))
