fn main() {
    println!("{} bytes", podgate::EBPF_OBJECT.len());
}
