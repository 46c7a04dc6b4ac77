//! Vendored from zmq-sys 0.12.0 with one change: libzmq is built against libsodium, so
//! CURVE security is compiled in (upstream builds `with_libsodium(None)`, which leaves
//! CURVE out). libsodium is linked statically from the system's `libsodium-dev`
//! (`.ci/run` installs it); `LIBSODIUM_LIB_DIR` and `LIBSODIUM_INCLUDE_DIR` override where
//! it is looked for.
use std::path::PathBuf;

fn sodium() -> zeromq_src::LibLocation {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let lib = std::env::var_os("LIBSODIUM_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/{arch}-linux-gnu")));
    let include =
        std::env::var_os("LIBSODIUM_INCLUDE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/include"));
    if !lib.join("libsodium.a").exists() {
        panic!(
            "libsodium.a not found in {} (install libsodium-dev, or set LIBSODIUM_LIB_DIR): \
             libzmq needs it for CURVE security",
            lib.display()
        );
    }
    // zeromq-src prints its search path with `{:?}` (quoted), which the linker does not
    // find; say it plainly as well.
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rerun-if-env-changed=LIBSODIUM_LIB_DIR");
    println!("cargo:rerun-if-env-changed=LIBSODIUM_INCLUDE_DIR");
    zeromq_src::LibLocation::new(lib, include)
}

pub fn configure() {
    println!("cargo:rerun-if-changed=build/main.rs");
    println!("cargo:rerun-if-env-changed=PROFILE");
    zeromq_src::Build::new().with_libsodium(Some(sodium())).build();
}

fn main() {
    configure()
}
