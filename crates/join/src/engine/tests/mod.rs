//! The engine's tests: each rule alone (`calls`), whole sessions in any order
//! (`sessions`), the wire index (`wire`), and the mesh's two sidecars (`mesh`).

mod calls;
mod mesh;
mod sessions;
