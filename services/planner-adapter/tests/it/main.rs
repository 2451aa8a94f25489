//! planner-adapter in-process against a real nats-server and the sandbox's Planner.

mod details;
mod flows;
mod kv_cost;
mod lifecycle;
mod locks;
mod paging;
mod replicas;
mod support;
