fn main() -> std::process::ExitCode {
    buildopt::cli::main(std::env::args_os())
}
