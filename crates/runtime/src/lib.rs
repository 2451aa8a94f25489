//! tgb-runtime
