//! Someone with write access to the collector's store tries to change history without `verify`
//! saying so.
