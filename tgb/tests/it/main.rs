//! tgb end to end: `tgb up` in-process, the operator commands, the demo.

mod operator;
mod support;
