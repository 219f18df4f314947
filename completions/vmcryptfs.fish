# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_vmcryptfs_global_optspecs
    string join \n keystore= h/help V/version
end

function __fish_vmcryptfs_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_vmcryptfs_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_vmcryptfs_using_subcommand
    set -l cmd (__fish_vmcryptfs_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c vmcryptfs -n "__fish_vmcryptfs_needs_command" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vmcryptfs -n "__fish_vmcryptfs_needs_command" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_needs_command" -f -a "provider" -d 'Manage key providers (the embedded one and KMIP servers) and their KEK versions'
complete -c vmcryptfs -n "__fish_vmcryptfs_needs_command" -f -a "vm" -d 'Create and inspect encrypted VM homes'
complete -c vmcryptfs -n "__fish_vmcryptfs_needs_command" -f -a "mount" -d 'Mount a datastore: its VM homes appear as plain files at MOUNTPOINT'
complete -c vmcryptfs -n "__fish_vmcryptfs_needs_command" -f -a "status" -d 'List every VM home of a datastore with its provider, KEK version and disk policy, flagging those still wrapped under an old KEK version'
complete -c vmcryptfs -n "__fish_vmcryptfs_needs_command" -f -a "rekey" -d 'Shallow re-key of VM homes: rewrap their DEKs under the current KEK version. On a mounted datastore this goes through the mount\'s control files, so the mount\'s key cache stays consistent'
complete -c vmcryptfs -n "__fish_vmcryptfs_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "init" -d 'Create the embedded key store: a master key file (0600) and KEK version 1'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "add-kmip" -d 'Register a KMIP key management server as provider NAME. Checks that the server answers and creates KEK version 1 there if the key series is new'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "set-default" -d 'Make NAME the provider that wraps new VM homes (`local` is the embedded one)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "rotate" -d 'Create a new KEK version and make it current. Existing VMs keep working; re-key them to move them to the new version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "list" -d 'List every provider: reachability, KEK versions with their state, and how many VM homes (in the datastores this key store knows) each version wraps'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "retire" -d 'Retire a KEK version: it still unwraps existing bundles but no longer wraps new ones. On KMIP this is Revoke'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "destroy" -d 'Destroy a KEK version\'s key material. Refused while any known VM home is still wrapped under it (re-key them first with `vmcryptfs rekey --all DATASTORE`), and for the current version. On KMIP this is Revoke, then Destroy'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "export" -d 'Write a backup of the embedded key store\'s KEK versions, still wrapped under the master key'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "import" -d 'Restore KEK versions from a backup made by `provider export`'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and not __fish_seen_subcommand_from init add-kmip set-default rotate list retire destroy export import help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from init" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from init" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from init" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l server -d 'The KMS address, HOST:PORT (KMIP\'s port is usually 5696)' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l ca -d 'CA certificate (PEM) that signed the KMS\'s certificate' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l cert -d 'Client certificate (PEM), with the clientAuth extended key usage' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l key -d 'The client certificate\'s private key (PEM)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l wrap -d 'Where DEKs are wrapped' -r -f -a "server\t'KMIP Encrypt/Decrypt (AES-GCM, KMIP 1.4): the KEK never leaves the KMS'
local\t'KMIP Get, then AES-GCM on this host; the KEK is wiped after each use'"
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l key-series -d 'KMIP Name prefix and Object Group of the KEKs (versions are named SERIES-v1, SERIES-v2, ...). Hosts that share VMs must use the same. Default: vmcryptfs-NAME' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l connect-timeout -d 'TCP connect timeout, seconds' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l request-timeout -d 'Timeout of each read or write of a request, seconds' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l retries -d 'Retries of a failed connection or read-only request (backoff 0.1 s, doubling)' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l operation-timeout -d 'Limit of one whole provider operation (wrap, unwrap, listing, rotation), seconds: every KMIP request it makes, with name resolution, connects, retries and backoff, gives up by then' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -l default -d 'Also make it the provider that wraps new VM homes'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from add-kmip" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from set-default" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from set-default" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from set-default" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from rotate" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from rotate" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from rotate" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from list" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from retire" -l provider -d 'The provider (default: the default provider)' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from retire" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from retire" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from retire" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from destroy" -l provider -d 'The provider (default: the default provider)' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from destroy" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from destroy" -l force -d 'Destroy even though VMs still use it; those VMs are locked out on every host that does not hold their DEK in memory'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from destroy" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from destroy" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from export" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from export" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from import" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from import" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "init" -d 'Create the embedded key store: a master key file (0600) and KEK version 1'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "add-kmip" -d 'Register a KMIP key management server as provider NAME. Checks that the server answers and creates KEK version 1 there if the key series is new'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "set-default" -d 'Make NAME the provider that wraps new VM homes (`local` is the embedded one)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "rotate" -d 'Create a new KEK version and make it current. Existing VMs keep working; re-key them to move them to the new version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "list" -d 'List every provider: reachability, KEK versions with their state, and how many VM homes (in the datastores this key store knows) each version wraps'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "retire" -d 'Retire a KEK version: it still unwraps existing bundles but no longer wraps new ones. On KMIP this is Revoke'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "destroy" -d 'Destroy a KEK version\'s key material. Refused while any known VM home is still wrapped under it (re-key them first with `vmcryptfs rekey --all DATASTORE`), and for the current version. On KMIP this is Revoke, then Destroy'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "export" -d 'Write a backup of the embedded key store\'s KEK versions, still wrapped under the master key'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "import" -d 'Restore KEK versions from a backup made by `provider export`'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand provider; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -f -a "create" -d 'Turn an empty or new directory into an encrypted VM home: a random DEK, wrapped under the current KEK, in a key bundle'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -f -a "encrypt" -d 'Convert an existing plain VM home in place: a new DEK and bundle, then every file encrypted, one by one (resumable after a crash)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -f -a "encrypt-disks" -d 'Encrypt the VM\'s disks (*.vmdk) in place and record the policy'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -f -a "decrypt-disks" -d 'Decrypt the VM\'s disks (*.vmdk) in place; they then pass through'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -f -a "convert-format" -d 'Rewrite every encrypted file of the VM in another content format (default 2, page-aligned), one by one, resumable after a crash; the key bundle then names the new format. The VM must be idle'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -f -a "status" -d 'Show the key status of a VM home (works unmounted)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -f -a "rekey" -d 'Shallow re-key: rewrap the VM\'s DEK under the current KEK version. Only the key bundle changes. On a mounted datastore prefer `echo rekey > MNT/VM/.control`'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and not __fish_seen_subcommand_from create encrypt encrypt-disks decrypt-disks convert-format status rekey help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from create" -l content-format -d 'Content format of the VM\'s encrypted files: 2 (page-aligned data, the default: a 4 KiB write replaces whole backing pages) or 1 (interleaved, readable by vmcryptfs releases before format 2). docs/FORMAT.md §3 and §3.9' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from create" -l provider -d 'The provider that wraps the DEK (default: the default provider)' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from create" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from create" -l encrypt-disks -d 'Also encrypt the VM\'s disks (*.vmdk). Without it, disks pass through'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from create" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from create" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from encrypt" -l content-format -d 'Content format of the VM\'s encrypted files: 2 (page-aligned data, the default: a 4 KiB write replaces whole backing pages) or 1 (interleaved, readable by vmcryptfs releases before format 2). docs/FORMAT.md §3 and §3.9' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from encrypt" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from encrypt" -l encrypt-disks -d 'Also encrypt the VM\'s disks (*.vmdk)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from encrypt" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from encrypt" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from encrypt-disks" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from encrypt-disks" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from encrypt-disks" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from decrypt-disks" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from decrypt-disks" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from decrypt-disks" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from convert-format" -l content-format -d 'Content format of the VM\'s encrypted files: 2 (page-aligned data, the default: a 4 KiB write replaces whole backing pages) or 1 (interleaved, readable by vmcryptfs releases before format 2). docs/FORMAT.md §3 and §3.9' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from convert-format" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from convert-format" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from convert-format" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from status" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from status" -l json -d 'Print JSON instead of `key: value` lines'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from status" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from rekey" -l provider -d 'Move the VM to this provider (still a shallow re-key)' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from rekey" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from rekey" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from rekey" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "create" -d 'Turn an empty or new directory into an encrypted VM home: a random DEK, wrapped under the current KEK, in a key bundle'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "encrypt" -d 'Convert an existing plain VM home in place: a new DEK and bundle, then every file encrypted, one by one (resumable after a crash)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "encrypt-disks" -d 'Encrypt the VM\'s disks (*.vmdk) in place and record the policy'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "decrypt-disks" -d 'Decrypt the VM\'s disks (*.vmdk) in place; they then pass through'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "convert-format" -d 'Rewrite every encrypted file of the VM in another content format (default 2, page-aligned), one by one, resumable after a crash; the key bundle then names the new format. The VM must be idle'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "status" -d 'Show the key status of a VM home (works unmounted)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "rekey" -d 'Shallow re-key: rewrap the VM\'s DEK under the current KEK version. Only the key bundle changes. On a mounted datastore prefer `echo rekey > MNT/VM/.control`'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand vm; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand mount" -s o -d 'Mount options, comma-separated: allow_other, allow_root, ro, threads=N (FUSE worker threads, default 4), read_around=auto|off|KIB (whether a small read of an encrypted file that misses the page cache also brings in the aligned window of its backing file around it: auto, the default, does so with 128 KiB windows for a file that fits in available memory while its reads keep coming back to cached pages; off (or 0) never; KIB always, with that window; for a read-only open through the page cache the window\'s plaintext is also copied into the kernel\'s cache, so reads of its neighbours never reach the daemon), read_ahead=auto|off|MIB (how far ahead of a sequential reader of an encrypted file the backing reads are started: auto, the default, reads 4 MiB ahead when the device a file lives on reads ahead less by itself and leaves it to the device otherwise; off (or 0) always leaves it to the device; MIB, up to 64, reads that far ahead), status_group=GROUP (a group name or number whose members may read the status files `.control`, `.control.json` and `.stats`, mode 0440, `.control` 0640; commands stay the owner\'s; without it only the user the mount runs as may read them), and kernel options such as noatime, nodev, nosuid, noexec' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand mount" -l log-file -d 'In the background, append logs to this file instead of discarding them' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand mount" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand mount" -s f -l foreground -d 'Stay in the foreground (logs to stderr; Ctrl-C or SIGTERM unmounts)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand mount" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand mount" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand status" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand status" -l json -d 'Print JSON instead of a table'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand status" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand status" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand rekey" -l provider -d 'Move the VMs to this provider\'s current KEK (default: each VM stays with the provider that wraps it)' -r
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand rekey" -l keystore -d 'Directory of the embedded key provider\'s key store (master key and KEK database). Default: /var/lib/vmcryptfs for root, else $XDG_DATA_HOME/vmcryptfs (~/.local/share/vmcryptfs)' -r -F
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand rekey" -l all -d 'Re-key every VM home of the datastore'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand rekey" -l deep -d 'Deep re-key: a new DEK, and every encrypted file re-encrypted under it (resumable; the VM\'s files must not be open)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand rekey" -s h -l help -d 'Print help'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand rekey" -s V -l version -d 'Print version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and not __fish_seen_subcommand_from provider vm mount status rekey help" -f -a "provider" -d 'Manage key providers (the embedded one and KMIP servers) and their KEK versions'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and not __fish_seen_subcommand_from provider vm mount status rekey help" -f -a "vm" -d 'Create and inspect encrypted VM homes'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and not __fish_seen_subcommand_from provider vm mount status rekey help" -f -a "mount" -d 'Mount a datastore: its VM homes appear as plain files at MOUNTPOINT'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and not __fish_seen_subcommand_from provider vm mount status rekey help" -f -a "status" -d 'List every VM home of a datastore with its provider, KEK version and disk policy, flagging those still wrapped under an old KEK version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and not __fish_seen_subcommand_from provider vm mount status rekey help" -f -a "rekey" -d 'Shallow re-key of VM homes: rewrap their DEKs under the current KEK version. On a mounted datastore this goes through the mount\'s control files, so the mount\'s key cache stays consistent'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and not __fish_seen_subcommand_from provider vm mount status rekey help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from provider" -f -a "init" -d 'Create the embedded key store: a master key file (0600) and KEK version 1'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from provider" -f -a "add-kmip" -d 'Register a KMIP key management server as provider NAME. Checks that the server answers and creates KEK version 1 there if the key series is new'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from provider" -f -a "set-default" -d 'Make NAME the provider that wraps new VM homes (`local` is the embedded one)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from provider" -f -a "rotate" -d 'Create a new KEK version and make it current. Existing VMs keep working; re-key them to move them to the new version'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from provider" -f -a "list" -d 'List every provider: reachability, KEK versions with their state, and how many VM homes (in the datastores this key store knows) each version wraps'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from provider" -f -a "retire" -d 'Retire a KEK version: it still unwraps existing bundles but no longer wraps new ones. On KMIP this is Revoke'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from provider" -f -a "destroy" -d 'Destroy a KEK version\'s key material. Refused while any known VM home is still wrapped under it (re-key them first with `vmcryptfs rekey --all DATASTORE`), and for the current version. On KMIP this is Revoke, then Destroy'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from provider" -f -a "export" -d 'Write a backup of the embedded key store\'s KEK versions, still wrapped under the master key'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from provider" -f -a "import" -d 'Restore KEK versions from a backup made by `provider export`'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "create" -d 'Turn an empty or new directory into an encrypted VM home: a random DEK, wrapped under the current KEK, in a key bundle'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "encrypt" -d 'Convert an existing plain VM home in place: a new DEK and bundle, then every file encrypted, one by one (resumable after a crash)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "encrypt-disks" -d 'Encrypt the VM\'s disks (*.vmdk) in place and record the policy'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "decrypt-disks" -d 'Decrypt the VM\'s disks (*.vmdk) in place; they then pass through'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "convert-format" -d 'Rewrite every encrypted file of the VM in another content format (default 2, page-aligned), one by one, resumable after a crash; the key bundle then names the new format. The VM must be idle'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "status" -d 'Show the key status of a VM home (works unmounted)'
complete -c vmcryptfs -n "__fish_vmcryptfs_using_subcommand help; and __fish_seen_subcommand_from vm" -f -a "rekey" -d 'Shallow re-key: rewrap the VM\'s DEK under the current KEK version. Only the key bundle changes. On a mounted datastore prefer `echo rekey > MNT/VM/.control`'
