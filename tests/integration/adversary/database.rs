//! A database user tries to hide a bulk read from the database audit sensor or leak secrets through it.
