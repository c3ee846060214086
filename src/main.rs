fn main() {
    let code = codellama_lsp::cli::main();
    // Exit without waiting for tokio's blocking stdin reader (see `cli::run_serve`).
    std::process::exit(code);
}
