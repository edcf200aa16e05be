//! The in-memory queue passes the queue conformance suite.

sluice_shared::queue_conformance!(async { ((), sluice_shared::MemoryQueue::new()) });
