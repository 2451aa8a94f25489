//! Integration tests of the Planner emulator over real HTTP (loopback, port 0).

mod admin;
mod batch;
mod directory;
mod etags;
mod fixtures;
mod limits;
mod plans;
mod support;
mod tasks;
mod validation;
