//! Every integration test in one binary: each file is a module, and `common` holds what
//! they share (a private database per test, test jobs, processes, the fault proxy, the
//! HTTP client). One binary links the crate once instead of once per file, and its tests
//! run side by side. `tests/tracing.rs` stays a binary of its own: a thread-local
//! subscriber in a binary whose other tests run without one can see span callsites
//! already cached as uninteresting.

mod common;

mod batches;
mod cancel;
mod cli;
mod connections;
mod counts;
mod dashboard;
mod exactly_once;
mod faults;
mod flow;
mod galera;
mod handoff;
mod metadata;
mod migrate;
mod queue;
mod recurring;
mod rescuer;
mod silent;
mod store;
mod supervisor;
mod testing;
mod turns;
mod wake;
mod web;
mod worker;
