//! An insider on a watched host tries to hide a file export from the file sensor.
