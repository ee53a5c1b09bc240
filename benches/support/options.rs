//! The benchmarks' command-line options, and the machine's load to print beside their figures.

/// The value of `--name VALUE` on the benchmark's command line, if given; a value that does not
/// parse stops the benchmark naming the option.
pub fn option<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    let value = args.iter().position(|a| a == name).map(|i| {
        args.get(i + 1)
            .unwrap_or_else(|| panic!("{name} needs a value"))
    })?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} {value}: not a valid value")),
    )
}

/// The load average over the last minute, as `/proc/loadavg` has it.
#[allow(dead_code)] // Not every benchmark prints it.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}
