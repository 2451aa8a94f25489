//! tgb-service: the Entra credential the configuration names, used against the sandbox.

mod entra;
