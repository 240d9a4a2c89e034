# fail2ban action: a ban goes into the agent's nftables sets (one list shared by SIP, SSH
# and web) with the jail's ban time as the element's timeout, so the kernel lifts it by
# itself. It runs in fail2ban's process through libnftables (python3-nftables): the shell
# and nft process a command action forks cost ~0.5 s per ban under emulation.

import contextlib

import nftables
from fail2ban.server.action import ActionBase
from pbxagent.network.bans import element_command


class PbxNft(ActionBase):
    def __init__(self, jail, name, **_options):
        super().__init__(jail, name)
        self._nft = nftables.Nftables()

    def _run(self, command):
        code, _out, err = self._nft.cmd(command)
        if code:
            raise RuntimeError(f"nft {command}: {err.strip()}")

    def ban(self, aInfo):
        seconds = int(aInfo["bantime"])
        self._run(element_command("add", str(aInfo["ip"]), seconds if seconds > 0 else None))

    def unban(self, aInfo):
        # The element's own timeout usually lifted it already; `unbanip` lifts it early.
        with contextlib.suppress(RuntimeError):
            self._run(element_command("delete", str(aInfo["ip"])))

    def flush(self):
        # Stopping fail2ban must not lift bans: the guard owns the set, saves it and puts
        # it back after a reboot. True tells fail2ban not to unban ticket by ticket.
        return True


Action = PbxNft
