//! tgb-testkit
