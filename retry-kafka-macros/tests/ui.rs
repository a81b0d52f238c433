//! Compile-time checks of the macros: every rejected form is an error at the offending token
//! (tests/ui/fail/*.stderr), every accepted form compiles and registers what it says
//! (tests/ui/pass).

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
