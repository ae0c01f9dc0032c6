fn main() -> std::process::ExitCode {
    match scimlog::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scimlog: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
