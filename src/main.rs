fn main() -> std::process::ExitCode {
    ectunnel::cli::main()
}
