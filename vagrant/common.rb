# What every Vigil Vagrantfile shares: resources, the synced build output and smoke script,
# and provisioning that installs the packages (`install`, per distribution) then runs smoke.sh.
def vigil_vm(config, box, install)
  config.vm.box = box
  config.vm.provider "virtualbox" do |vb|
    vb.memory = 2048
    vb.cpus = 2
  end
  config.vm.provider "libvirt" do |lv|
    lv.memory = 2048
    lv.cpus = 2
  end
  # target/ holds the built packages; smoke.sh sits beside the per-distribution directories.
  config.vm.synced_folder "../../target", "/vigil", type: "rsync", rsync__exclude: ["debug/", "release/build/", "release/deps/"]
  config.vm.synced_folder "..", "/vigil-vagrant", type: "rsync"
  config.vm.provision "shell", inline: "set -eu\n#{install}\nsh /vigil-vagrant/smoke.sh\n"
end
