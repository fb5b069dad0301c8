//! The xenmem agent: a unikernel that boots under Xen and runs
//! [`xenmem_agent::agent::run`]. All of it lives in the agent's library
//! (feature `rt`); this file only makes the linker pull it in.
#![no_std]
#![no_main]

extern crate xenmem_agent;
