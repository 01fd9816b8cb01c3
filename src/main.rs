//! The `buildopt` binary: everything is in the library (`buildopt::cli`).
fn main() -> std::process::ExitCode {
    buildopt::cli::main(std::env::args_os())
}
