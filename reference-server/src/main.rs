//! The `reference-server` command: `serve`, `admin ...` and `chat`.
//! Argument parsing lives in `cli`; the work is done by the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
