//! Compile-time behaviour of `#[derive(DomainEvent)]`: what compiles, and the errors misuse gets.

#[test]
fn domain_event_derive() {
    let t = trybuild::TestCases::new();
    t.pass("tests/domain_event/pass/*.rs");
    t.compile_fail("tests/domain_event/fail/*.rs");
}
