//! The `lookalike` binary: see `lookalike --help`.

fn main() -> std::process::ExitCode {
    lookalike::cli::main()
}
