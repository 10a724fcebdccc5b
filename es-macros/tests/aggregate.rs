//! Compile-time behaviour of `#[derive(Aggregate)]`.

#[test]
fn aggregate_derive() {
    let t = trybuild::TestCases::new();
    t.pass("tests/aggregate/pass/*.rs");
    t.compile_fail("tests/aggregate/fail/*.rs");
}
