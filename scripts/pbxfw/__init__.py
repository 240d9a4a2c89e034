"""pbxfw host tooling: board/recipe resolution, image build, QEMU runner."""
