//! Compiles `proto/bannin/v1/*.proto` with protox (pure Rust), so no machine needs `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/bannin/v1/events.proto",
        "proto/bannin/v1/collector.proto",
        "proto/bannin/v1/query.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    // The executables' relative relocations packed (DT_RELR; GNU ld 2.38+, glibc 2.36+, so Debian
    // 12 and later): the table the loader reads at every start shrinks from about 650 KiB to a few,
    // and that is memory the idle agent no longer keeps resident (BENCHMARKS.md, idle).
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
