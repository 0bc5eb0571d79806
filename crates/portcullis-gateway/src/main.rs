//! The `portcullis` binary (work in progress).

fn main() {
    println!("portcullis");
}
