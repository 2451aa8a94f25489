//! tg-bridge's sandbox (skeleton: filled in by the sandbox work).
