//! tgb-bus
