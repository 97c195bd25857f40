//! Sizing: the CPU and memory a container really gets → workers, threads, connections.
//!
//! Pure and deterministic: no I/O, no clock. The reconciler, the `size` command, the tuner's
//! bounds and the simulator call the same functions. The formulas and their sources are in `docs/sizing.md`.

mod basis;
mod formulas;

pub use basis::{
    Basis, BasisError, NodeShape, matching_node_shapes, quantity_value, resolve_basis,
};
pub use formulas::{
    Concurrency, EVENT_LOOP_CONNECTIONS, MEMORY_SAFETY, MemoryModel, Sizing, SizingError,
    SizingInput, WorkerBounds, effective_worker_class, format_cores, size,
};
